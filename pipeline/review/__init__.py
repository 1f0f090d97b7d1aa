"""What people read after a run: the report, the review gallery (its page in
`gallery_files/`) and the Prefect artifact. Imports the packages above it in the data path."""
