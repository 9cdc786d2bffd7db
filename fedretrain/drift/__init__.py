"""Drifting data: concept streams and the schedules that say which concept each site sees."""
