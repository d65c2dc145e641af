"""Multi-KG4Rec: knowledge graph + multimodal recommendation, and its baselines under one protocol."""
__version__ = "0.1.0"
