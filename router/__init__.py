"""The router: tag parser, keyword table, dispatcher, cache, context renderer, orchestrator, CLI."""

__version__ = "0.1.0"
