-- purpose: One patient's bag: all tiles of all its slides with their embeddings, for one encoder.
-- grain: one row per tile (and tiling), in slide_id, tile_id order
-- params: $patient_id varchar: the patient, e.g. TCGA-AA-3511
--         $encoder varchar: the encoder name (a folder under embeddings/<tiling>/)
-- columns: patient_id, slide_id, tiling, encoder, tile_id, x, y, embedding
with patient_slides as (
    select s.slide_id, s.patient_id
    from slides as s
    where s.patient_id = $patient_id
),

bag as (
    select ps.patient_id, e.slide_id, e.tiling, e.encoder, e.tile_id, e.x, e.y, e.embedding
    from embeddings as e
    inner join patient_slides as ps on ps.slide_id = e.slide_id
    where e.encoder = $encoder
)

select b.patient_id, b.slide_id, b.tiling, b.encoder, b.tile_id, b.x, b.y, b.embedding
from bag as b
order by b.tiling, b.slide_id, b.tile_id;
