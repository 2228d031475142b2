"""ArtStoryAI caching proxy: a Redis-backed cache in front of AI and image APIs."""

__version__ = "0.1.0"
