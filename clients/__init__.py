"""The Flower ClientApp: each site's local training and evaluation."""
