"""Messages from the other end, made fit for one log line or one dead-letter reason."""

MESSAGE_LIMIT = 300


def excerpt(text: str) -> str:
    """`text` on one line, at most MESSAGE_LIMIT characters."""
    line = " ".join(text.split())
    if not line:
        return "(empty answer)"
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 3] + "..."
