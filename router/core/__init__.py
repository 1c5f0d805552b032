"""The core: tag parser, keyword table, dispatcher, cache, context renderer, the run loop and its protocols."""
