"""Files that land on hosts as they are (no templating), run by the host's Python."""
