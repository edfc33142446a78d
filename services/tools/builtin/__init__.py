"""The built-in tools: calculator, clock, unit_convert, text_stats and search_docs."""
