"""The Flower ServerApp: fedretrain's federation loop wired to a Flower Grid."""
