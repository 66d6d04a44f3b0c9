"""critic_actor package."""
