"""The web dashboard for researchers and IT: fleet, arming, recordings, the dataset, audit."""
