"""Local retrieval: embeddings, a persistent HNSW index, document loading and chunking, RAG."""
