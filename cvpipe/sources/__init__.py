"""What the download stage fetches from: Kaggle, a local archive or folder, or the synthetic generator."""
