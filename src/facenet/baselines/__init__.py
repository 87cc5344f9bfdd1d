"""Third-party face models behind the project's embedder interface, for comparison."""
