"""facenet: face recognition with FaceNet embeddings (Schroff, Kalenichenko, Philbin, 2015)."""
