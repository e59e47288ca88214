"""Physics preprocessing shared by training and grid jobs: numpy only."""
