-- purpose: The k tiles of one encoder most similar (cosine) to a given vector (e.g. a prototype or a centroid).
-- grain: one row per neighbour (k per tiling of the encoder), best first
-- params: $vector float[]: the query vector, as long as the encoder's embeddings
--         $encoder varchar: the encoder name
--         $k integer: how many neighbours
-- columns: tiling, encoder, rank, slide_id, tile_id, x, y, similarity
-- run_query and `slide2expr sql` answer it through sql.similar_to_vector (exact on small stores, the
-- similarity index on large ones), with these columns; --sql-only (route=False) runs this SQL as written.
with scored as (
    select
        e.tiling,
        e.encoder,
        e.slide_id,
        e.tile_id,
        e.x,
        e.y,
        list_cosine_similarity(e.embedding::float[], $vector::float[]) as similarity
    from embeddings as e
    where e.encoder = $encoder
),

ranked as (
    select
        s.*,
        row_number() over (partition by s.tiling order by s.similarity desc, s.slide_id, s.tile_id) as rank
    from scored as s
)

select r.tiling, r.encoder, r.rank, r.slide_id, r.tile_id, r.x, r.y, r.similarity
from ranked as r
where r.rank <= $k::integer
order by r.tiling, r.rank;
