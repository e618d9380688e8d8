"""nftables front end: nft 1.0.6's language, its ruleset model and its listing formats."""
