"""Pipeline wing: the stage runtime and one module per nightly stage; each stage uses the other wings,
never another stage."""
