"""chatgpt-cli: a fast, dependable command-line chatbot and text generator for GPT-2 models."""

__version__ = "0.1.0"
