from .cli import main

main(prog_name="l2r")
