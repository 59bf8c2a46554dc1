"""Command-line tools (python -m minitrain.<tool>): thin layers over the library."""
