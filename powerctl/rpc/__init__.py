"""AMP between region and pserv: commands (:mod:`.commands`) and authentication."""
