"""Placeholder for the main job; replaced by the foundation demo below."""
