"""The HTTP door: the Ollama-compatible proxy (`vision-router serve`) and its wire formats."""
