"""Small shared helpers: argument checks, atomic file writes, video and colour-map output."""
