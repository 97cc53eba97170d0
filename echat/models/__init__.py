"""Neural modules of echat: speech encoder, adapter and the reference checkpoint key map."""
