"""Reading and writing media files (video and images)."""
