"""Registration module (filled in by the component that lands here)."""
