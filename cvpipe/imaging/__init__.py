"""Image bytes: archives read in place, the one decode policy, perceptual hashes."""
