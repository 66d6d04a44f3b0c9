"""artist_actor package."""
