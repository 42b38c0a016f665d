"""Migration scripts. A package only so that a non-editable install ships them."""
