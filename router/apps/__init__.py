"""Applications built on the core: batch runs, image search (RAG), presets, routing eval, annotations, the demo."""
