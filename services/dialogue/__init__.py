"""The dialogue service: each user's events answered in order, exactly once, across replicas."""
