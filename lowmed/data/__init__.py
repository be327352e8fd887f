"""Reading raw datasets, writing prepared ones, and feeding images to models."""
