-- purpose: The k tiles most similar (cosine) to a given tile, within the same tiling and encoder.
-- grain: one row per neighbour (k per tiling and encoder that hold the query tile), best first
-- params: $slide_id varchar: the query tile's slide
--         $tile_id integer: the query tile's tile_id
--         $k integer: how many neighbours
-- columns: tiling, encoder, rank, slide_id, tile_id, x, y, similarity
-- The query tile itself is left out; other tiles of its slide are candidates.
-- run_query and `slide2expr sql` answer it through sql.similar_tiles (exact on small stores, the similarity
-- index on large ones), with these columns; --sql-only (route=False) runs this SQL as written.
with query_tile as (
    select e.tiling, e.encoder, e.embedding
    from embeddings as e
    where e.slide_id = $slide_id and e.tile_id = $tile_id::integer
),

scored as (
    select
        e.tiling,
        e.encoder,
        e.slide_id,
        e.tile_id,
        e.x,
        e.y,
        array_cosine_similarity(e.embedding, q.embedding) as similarity
    from embeddings as e
    inner join query_tile as q on q.tiling = e.tiling and q.encoder = e.encoder
    where not (e.slide_id = $slide_id and e.tile_id = $tile_id::integer)
),

ranked as (
    select
        s.*,
        row_number() over (partition by s.tiling, s.encoder order by s.similarity desc, s.slide_id, s.tile_id)
            as rank
    from scored as s
)

select r.tiling, r.encoder, r.rank, r.slide_id, r.tile_id, r.x, r.y, r.similarity
from ranked as r
where r.rank <= $k::integer
order by r.tiling, r.encoder, r.rank;
