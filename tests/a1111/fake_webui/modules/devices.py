device = "cpu"
