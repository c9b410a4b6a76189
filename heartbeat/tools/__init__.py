"""Tools around the product, never imported by it: the load generator and the demo."""
