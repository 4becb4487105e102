"""The demo's data: synthetic card transactions with a learnable fraud signal."""
