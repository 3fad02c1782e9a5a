"""Example scripts; a package so that `lightning-split serve --model examples.<script>:<Class>` can import them."""
