-- purpose: Mean- and max-pooled embedding of every patient over all tiles of all its slides.
-- grain: one row per patient, tiling and encoder
-- params: none
-- columns: patient_id, tiling, encoder, n_slides, n_tiles, mean_embedding (FLOAT[]), max_embedding (FLOAT[])
-- The mean is over tiles (a slide with more tiles weighs more), as in a patient-level bag.
-- A slide with neither a patient id nor a TCGA barcode pools as a null patient.
-- run_query and `slide2expr sql` answer it from the per-slide statistics cached beside a local store (one
-- streaming pass the first time), with these columns; --sql-only (route=False) runs this SQL as written.
with slide_patient as (
    select
        s.slide_id,
        coalesce(s.patient_id, nullif(regexp_extract(s.slide_id, '^(TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4})', 1), ''))
            as patient_id
    from slides as s
),

elements as (
    select
        sp.patient_id,
        e.slide_id,
        e.tiling,
        e.encoder,
        unnest(e.embedding::float[]) as v,
        generate_subscripts(e.embedding::float[], 1) as i
    from embeddings as e
    inner join slide_patient as sp on sp.slide_id = e.slide_id
),

per_dim as (
    select
        el.patient_id,
        el.tiling,
        el.encoder,
        el.i,
        count(distinct el.slide_id) as n_slides,
        count(*) as n_tiles,
        avg(el.v)::float as mean_v,
        max(el.v) as max_v
    from elements as el
    group by el.patient_id, el.tiling, el.encoder, el.i
)

select
    p.patient_id,
    p.tiling,
    p.encoder,
    max(p.n_slides) as n_slides,
    max(p.n_tiles) as n_tiles,
    list(p.mean_v order by p.i) as mean_embedding,
    list(p.max_v order by p.i) as max_embedding
from per_dim as p
group by p.patient_id, p.tiling, p.encoder
order by p.patient_id, p.tiling, p.encoder;
