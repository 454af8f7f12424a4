"""Recurrent models in the chapter's notation, built only from minigrad's public API."""
