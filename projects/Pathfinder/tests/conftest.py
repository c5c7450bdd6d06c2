import os

# Before anything loads OpenMP (torch): spinning OpenMP threads thrash on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
