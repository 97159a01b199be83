"""What ``tasks.py`` needs to be a thin command line: argument parsing (:mod:`.args`), checks that
run before a guest is touched (:mod:`.preflight`), and rich rendering (:mod:`.render`,
:mod:`.components`)."""
