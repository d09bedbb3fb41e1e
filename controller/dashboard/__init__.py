"""The live operator dashboard (Starlette app + static page), served by the controller."""
