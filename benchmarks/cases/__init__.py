"""One module per benchmark case: `case_*` functions run in a fresh child process, `section` schedules them."""
