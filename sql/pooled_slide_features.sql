-- purpose: Mean- and max-pooled embedding of every slide (slide-level features for classical models).
-- grain: one row per slide, tiling and encoder
-- params: none
-- columns: slide_id, tiling, encoder, n_tiles, mean_embedding (FLOAT[]), max_embedding (FLOAT[])
-- Element-wise pooling: the embeddings are unnested to (tile, dimension) values, aggregated per dimension and
-- put back in dimension order.
-- run_query and `slide2expr sql` answer it from the per-slide statistics cached beside a local store (one
-- streaming pass the first time), with these columns; --sql-only (route=False) runs this SQL as written.
with elements as (
    select
        e.slide_id,
        e.tiling,
        e.encoder,
        unnest(e.embedding::float[]) as v,
        generate_subscripts(e.embedding::float[], 1) as i
    from embeddings as e
),

per_dim as (
    select
        el.slide_id,
        el.tiling,
        el.encoder,
        el.i,
        count(*) as n_tiles,
        avg(el.v)::float as mean_v,
        max(el.v) as max_v
    from elements as el
    group by el.slide_id, el.tiling, el.encoder, el.i
)

select
    p.slide_id,
    p.tiling,
    p.encoder,
    max(p.n_tiles) as n_tiles,
    list(p.mean_v order by p.i) as mean_embedding,
    list(p.max_v order by p.i) as max_embedding
from per_dim as p
group by p.slide_id, p.tiling, p.encoder
order by p.slide_id, p.tiling, p.encoder;
