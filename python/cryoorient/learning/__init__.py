"""The learned distance: the Siamese network G_w, its training data (datasets or on-the-fly
projections of maps and atomic models) and its training with L_DE (eq. 3).

Takes images (N, n, n); gives features (N, F) and distances d̂_p in radians, estimating d_q (eq. 2).
"""
