"""What both programs share: durations, setting parsers, logging set-up and the ASGI server."""
