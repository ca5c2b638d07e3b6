"""The router: config, scheduler, router loop, front doors, launcher, metrics."""
