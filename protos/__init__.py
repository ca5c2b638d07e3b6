"""Worker service contracts and their generated stubs."""
