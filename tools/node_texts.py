"""Hand-written texts of the help pages (web/docs/) and the translations (locales/), per node class.

The English input/output tooltips, defaults and ranges come from the nodes themselves (INPUT_TYPES, OUTPUT_TOOLTIPS);
the titles from nodes/common.py TITLES. What is written here: each node's place in the paper's pipeline, typical
values, a picture, and the Chinese (zh) texts. tools/build_surfaces.py turns both into the shipped files; the tests
check that every node, input and output has its texts in both languages.
"""

# Category path segments (nodeCategories in locales/<lang>/main.json)
CATEGORIES = {"MegaPortrait": {"en": "MegaPortrait", "zh": "MegaPortrait"},
              "Face": {"en": "Face", "zh": "人脸"},
              "Identity": {"en": "Identity", "zh": "身份"},
              "Maps": {"en": "Maps", "zh": "光照与高频图"},
              "Sampling": {"en": "Sampling", "zh": "采样"}}

# Inputs shared by several nodes: zh label, zh tooltip (a node's own entry overrides these)
SHARED_INPUTS_ZH = {
    "model": ("模型", "用于采样的模型（检查点 + 身份 LoRA）。"),
    "clip": ("CLIP", "模型的文本编码器。"),
    "vae": ("VAE", "把图像编码为潜空间并解码结果。"),
    "positive": ("正向", "正向提示词（使用身份 LoRA 时带上触发词，例如 'photo of sks person'）。"),
    "negative": ("负向", "负向提示词。"),
    "seed": ("种子", "噪声种子（与 KSampler 相同：同样的种子和设置得到同样的图像）。"),
    "steps": ("步数", "去噪步数。"),
    "cfg": ("CFG", "无分类器引导强度。"),
    "sampler_name": ("采样器", "ComfyUI 采样器（与 KSampler 的列表相同）。"),
    "scheduler": ("调度器", "ComfyUI 噪声调度（与 KSampler 的列表相同）。"),
    "denoise": ("降噪", "重绘的程度（1 = 完全重绘）。"),
    "face_analysis": ("人脸分析", "来自人脸分析加载器。"),
    "image": ("图像", "输入图像（任意尺寸，支持批次）。"),
    "mask": ("遮罩", "可选区域（例如脸部遮罩），与图像同尺寸。"),
    "sigma": ("sigma", "低通强度（高斯 sigma；box 滤波使用同样的范围）。“相对 512 像素”模式下这是 512 像素图像上的 sigma，"
                       "并随图像短边缩放，因此 512 与 2048 像素的脸得到相似的图。0 = 不滤波。越大，光照图只保留大范围明暗，"
                       "更多结构进入高频图。默认 8。"),
    "sigma_mode": ("sigma 模式", "sigma 的度量方式：“relative to 512 px”（随图像短边缩放）或 “pixels”（绝对像素）。"),
    "people": ("人物", "合影中的多个人物：来自“分配人脸给人物”的 people。批次中的每张脸用其人物的模型（以及该人物自己的提示词，如有）"
                       "采样，而不是 model。"),
    "filter_type": ("滤波类型", "低通核：gaussian（平滑，默认）或 box（均值，大 sigma 时略快）。"),
}

NODES = {
    "MegaPortraitFaceAnalysisLoader": dict(
        zh_title="人脸分析加载器",
        zh_description="加载人脸分析后端（检测器、关键点、身份特征），供人脸裁剪、贴回和身份节点使用。dlib 可离线直接使用；"
                       "insightface 使用 ComfyUI/models/insightface/models/<包名>/ 中的模型包。",
        role_en="Not a module of the paper but the eyes of every face step: Face Crop finds and aligns the reference "
                "face with it, Paste Back re-detects the re-rendered face's landmarks to undo pose drift, Load Source "
                "Photos and the Identity LoRA Trainer crop the source photos around the face, and Face Similarity / "
                "Select Best Identity measure identity. Connect one loader to all of them.",
        role_zh="不是论文中的模块，而是所有人脸步骤的“眼睛”：人脸裁剪用它找到并对齐参考人脸，贴回用它重新检测重绘人脸的关键点以校正姿态漂移，"
                "加载源照片和身份 LoRA 训练器用它围绕人脸裁剪源照片，人脸相似度 / 选择最佳身份用它度量身份。把同一个加载器连接到它们全部。",
        typical_en=["backend **dlib** (offline, CPU) for most work; **insightface** (buffalo_l) when faces are small, "
                    "turned or the identity check must be stricter (non-commercial model licence).",
                    "det_threshold 0.3 for dlib, 0.5 for insightface; lower it when a face is missed.",
                    "Keep refine_landmarks on: Paste Back's alignment relies on stable landmarks.",
                    "min_face 32; raise it (e.g. 64) on large photos of big faces for speed."],
        typical_zh=["多数情况用 **dlib**（离线、CPU）；脸很小、侧脸较多或身份检查需要更严格时用 **insightface**（buffalo_l，模型许可为非商业）。",
                    "det_threshold：dlib 用 0.3，insightface 用 0.5；漏检时调低。",
                    "保持 refine_landmarks 开启：贴回的对齐依赖稳定的关键点。",
                    "min_face 32；大照片中的大脸可调高（如 64）以加快速度。"],
        inputs_zh={
            "backend": ("后端", "dlib：HOG 检测器 + 5 点关键点 + 128 维特征，离线（pip：dlib-bin、face-recognition-models）。"
                                "insightface：模型包中的 SCRFD + ArcFace（非商业许可），需要 insightface + onnxruntime。"),
            "det_threshold": ("检测阈值", "检测阈值。dlib：HOG 分数（默认 0.3；越低找到越难的脸，也有更多误检）。"
                                        "insightface：置信度 0..1（通常 0.5）。"),
            "det_size": ("检测尺寸", "仅 insightface：检测器的输入尺寸。整张图在此尺寸下搜索，若 min_face 大小的脸在该尺寸下过小，"
                                    "还会在全分辨率下按此尺寸分块搜索。（dlib 在全分辨率图像上搜索，见 min_face。）"),
            "landmarks": ("关键点", "仅 dlib：5 点（默认；训练数据为 CC0）或 68 点（其训练数据不可商用）。"),
            "refine_landmarks": ("细化关键点", "仅 dlib 5 点：对翻转和轻微平移的框取关键点平均，得到亚像素级稳定的关键点"
                                             "（每张脸约 50 毫秒）。贴回对齐需要它。"),
            "insightface_pack": ("insightface 模型包", "仅 insightface：ComfyUI/models/insightface/models/ 下的文件夹名。"),
            "provider": ("执行设备", "仅 insightface：onnxruntime 执行提供者（auto = 有 CUDA 时用 CUDA，否则 CPU）。"),
            "min_face": ("最小人脸", "搜索的最小人脸，以全分辨率图像的像素计（检测框约为脸宽的 0.8：32 可找到约 40 像素宽的脸）。"
                                    "dlib 会把图像放大 72/min_face 倍搜索，减半约耗时 4 倍；大照片中的大脸可调高以加速。"),
            "turned_faces": ("侧转人脸", "仅 dlib。HOG + CNN：额外运行 dlib 的 CNN 人脸检测器，可找到正面 HOG 检测器漏掉的三分之二侧脸"
                                        "或低头的脸（从 80 像素起；单个 CPU 核心上每百万像素约 20 秒，因此默认关闭）。"),
        },
        outputs_zh=[("人脸分析", "供 MegaPortrait 人脸节点使用的人脸分析模型。")],
    ),
    "MegaPortraitFaceSimilarity": dict(
        zh_title="人脸相似度",
        zh_description="image_a 中人脸（多张图 = 同一身份，取平均）与 image_b 每张图中人脸之间的身份距离，并给出后端常用的同一人阈值。",
        role_en="The paper measures identity preservation with face-recognition embeddings; this node does the same "
                "check in the graph: the shipped full workflows compare the source photos with the final portrait "
                "('Identity check (source vs result)'). Use it to compare LoRA strengths, denoise values or seeds.",
        role_zh="论文用人脸识别特征衡量身份保持；此节点在图中做同样的检查：随附的完整工作流把源照片与最终人像进行比较"
                "（“Identity check (source vs result)”）。可用它比较 LoRA 强度、降噪值或种子。",
        typical_en=["same_person is true below the backend's threshold: dlib 0.6 (Euclidean), insightface 0.65 "
                    "(cosine distance). A good MegaPortrait result is well below it (dlib ~0.35-0.5).",
                    "on_no_face **report** for automated runs (an empty or face-less item does not stop the queue)."],
        typical_zh=["距离低于后端阈值时 same_person 为真：dlib 0.6（欧氏距离），insightface 0.65（余弦距离）。"
                    "好的 MegaPortrait 结果远低于阈值（dlib 约 0.35-0.5）。",
                    "自动批量运行时把 on_no_face 设为 **report**（没有人脸的图不会中断队列）。"],
        inputs_zh={
            "image_a": ("图像 A", "身份：一张照片，或同一人的多张照片（特征取平均）。"),
            "image_b": ("图像 B", "要比较的图像；每张取最大的人脸。"),
            "on_no_face": ("无人脸时", "image_b 中某张图没有人脸时：报错停止，或只在报告中说明（该图不计入平均；"
                                      "完全没有人脸时距离为无穷大）。"),
        },
        outputs_zh=[("距离", "image_b 批次上的平均距离（越低越相似）。"),
                    ("阈值", "后端常用阈值（dlib 0.6 欧氏距离；insightface 0.65 余弦距离）。"),
                    ("同一人", "平均距离低于阈值时为真。"),
                    ("报告", "可读的逐项距离。")],
    ),
    "MegaPortraitSelectBestIdentity": dict(
        zh_title="选择最佳身份",
        zh_description="返回批次中人脸与源身份最相似的那张图。",
        role_en="Picks, from a batch, the image whose face is closest to the source person: the best of several seeds "
                "or LoRA strengths, or (as in the shipped megaportrait_group workflow, 'Which face is the person') the "
                "face of a group photo that belongs to the person the identity LoRA was trained on.",
        role_zh="从一个批次中挑出人脸最接近源人物的图：多个种子或 LoRA 强度中最好的一张，或者（如随附的 megaportrait_group "
                "工作流中的 “Which face is the person”）合影中属于身份 LoRA 训练对象的那张脸。",
        typical_en=["source: 3-20 photos of the person (e.g. Load Source Photos' output); candidates: any batch "
                    "(Face Crop's faces, a batch of sampler results).",
                    "Read the report: when even the best distance is above the backend's threshold (dlib 0.6), none "
                    "of the candidates looks like the person."],
        typical_zh=["source：该人物的 3-20 张照片（例如加载源照片的输出）；candidates：任意批次（人脸裁剪得到的人脸、采样结果的批次）。",
                    "查看报告：如果最佳距离也高于后端阈值（dlib 0.6），说明没有候选像这个人。"],
        inputs_zh={
            "source": ("源照片", "源人物的照片（特征取平均）。"),
            "candidates": ("候选", "从中选择的批次；没有人脸的项会被跳过。"),
        },
        outputs_zh=[("最佳图像", "最相似的批次项。"), ("索引", "它在批次中的索引。"), ("距离", "它的身份距离。"),
                    ("报告", "可读的逐项距离。")],
    ),
    "MegaPortraitAddPerson": dict(
        zh_title="添加人物",
        zh_description="合影中的一个人物：名字、带其身份 LoRA 的 MODEL 和其照片（用其身份找到他们的脸）。每个人物串联一个"
                       "“添加人物”，然后接“分配人脸给人物”。",
        role_en="Several people in one group photo (as MagicID treats group photos): each person is their source photos "
                "and their own Identity Net (the identity LoRA, trained once per person). Add Person bundles one "
                "person's MODEL, prompt and photo identity; chained, they form the PEOPLE that Assign Faces to People "
                "matches the group photo's faces against.",
        role_zh="一张合影中的多个人物（如 MagicID 对合影的处理）：每个人物有自己的源照片和自己的身份网络（身份 LoRA，每人只训练一次）。"
                "“添加人物”把一个人的 MODEL、提示词和照片身份打包；串联起来就是“分配人脸给人物”用来匹配合影人脸的 PEOPLE。",
        typical_en=["model: the Identity LoRA Trainer's MODEL (or Load Identity LoRA) of this person; positive: the "
                    "prompt encoded with that trainer's CLIP; lora_name: the trainer's lora_name.",
                    "photos: the same photos the LoRA was trained on (3-20)."],
        typical_zh=["model：此人物的身份 LoRA 训练器输出的 MODEL（或加载身份 LoRA）；positive：用该训练器的 CLIP 编码的提示词；"
                    "lora_name：训练器的 lora_name。",
                    "photos：训练 LoRA 所用的同一批照片（3-20 张）。"],
        inputs_zh={
            "name": ("名字", "人物的名字（一个词；人脸分配和报告用它）。"),
            "model": ("模型", "带此人物身份 LoRA 的模型（训练器的 MODEL 输出，或加载身份 LoRA）。"),
            "photos": ("照片", "此人物的照片（例如加载源照片）：用其平均身份找到他们的脸。"),
            "people": ("人物", "之前添加的人物（另一个“添加人物”）；第一个人物留空。"),
            "positive": ("正向", "此人物自己的提示词（用带其 LoRA 的 CLIP 编码）；留空则用采样器的 positive 输入。"),
            "lora_name": ("LoRA 名称", "此人物的 LoRA 文件（训练器的 lora_name），供融合节点的 inpaint_model 使用。"),
        },
        outputs_zh=[("人物", "到目前为止的人物（本人物在最后）：接下一个“添加人物”或“分配人脸给人物”。")],
    ),
    "MegaPortraitAssignFacesToPeople": dict(
        zh_title="分配人脸给人物",
        zh_description="判定合影中每张脸属于谁：按人脸序号（“0=alice, 2=bob”），其余按身份（照片最接近且在阈值内的人物）。"
                       "不认识的脸保持不变或交给默认人物。输出要重绘的脸、它们的 FACE_CROP，以及带分配结果的人物，供采样器和融合使用。",
        role_en="Between Face Crop and the Identity Net: decides, for every face of the group photo, whose Identity Net "
                "re-renders it. Faces left untouched are dropped from the batch, so Paste Back never touches them; the "
                "PEOPLE output tells the Dual-Strength Identity Sampler, the Shading ControlNet Sampler and Harmonize "
                "which model (and prompt) each face and each seam takes.",
        role_zh="位于人脸裁剪与身份网络之间：为合影中的每张脸决定由谁的身份网络重绘。保持不变的脸会从批次中去掉，因此贴回不会碰它们；"
                "输出的 PEOPLE 告诉双强度身份采样器、着色 ControlNet 采样器和融合节点每张脸、每条接缝用哪个模型（和提示词）。",
        typical_en=["threshold 0 (the backend's: dlib 0.6). Read the report: it lists every face, its person and the "
                    "distance to each person.",
                    "assignment for the faces identity gets wrong or cannot see (profile, small): e.g. '3=bob'.",
                    "unknown_faces 'leave untouched' for bystanders; 'default person' to give everyone an identity."],
        typical_zh=["threshold 0（使用后端的阈值：dlib 0.6）。查看报告：列出每张脸、其人物以及到每个人物的距离。",
                    "身份判断错或看不清的脸（侧脸、过小）用 assignment 指定，例如 “3=bob”。",
                    "旁观者用 unknown_faces “leave untouched”；想让每张脸都有身份则用 “default person”。"],
        inputs_zh={
            "people": ("人物", "来自最后一个“添加人物”。"),
            "image": ("图像", "输入人脸裁剪的那张合影。"),
            "face": ("人脸", "人脸裁剪的 face 输出（每张脸，从左到右）。"),
            "face_crop": ("人脸裁剪信息", "人脸裁剪的 face_crop 输出。"),
            "match": ("匹配方式", "by identity：未在 assignment 中的脸交给照片最接近（在阈值内）的人物。by index only：只有 "
                                 "assignment 中的脸属于某人。"),
            "threshold": ("阈值", "仍算作该人物的最大身份距离；0 = 后端通常的同一人阈值（dlib 0.6，insightface 0.65）。"),
            "unknown_faces": ("未知人脸", "不属于任何已知人物的脸：保持原样，或按 default_person 重绘。"),
            "default_person": ("默认人物", "选择 “default person” 时未知人脸归属的人物名字（留空：第一个人物）。"),
            "assignment": ("指定分配", "明确的人脸 -> 人物条目，例如 “0=alice, 2=bob”（0 = 人脸裁剪中最左的脸；人物用名字或序号，"
                                      "0 = 第一个添加的）。优先于身份匹配。"),
        },
        outputs_zh=[("人脸", "要重绘的脸（人脸裁剪的输出，去掉保持不变的脸），顺序不变。"),
                    ("人脸裁剪信息", "它们的 FACE_CROP：接到贴回。"),
                    ("人物", "带每张脸归属的人物：接到采样器和融合节点的 people。"),
                    ("报告", "每张脸属于谁，以及身份距离。")],
    ),
    "MegaPortraitFaceCrop": dict(
        zh_title="人脸裁剪",
        zh_description="在参考图中找到人脸（或每张人脸），输出对齐的正方形裁剪（双眼水平、固定比例），以及供贴回节点把重绘的脸"
                       "准确放回的 FACE_CROP。",
        role_en="Start of the paper's inference: the reference portrait's face is cut out, aligned (eyes level, fixed "
                "scale) and resized to the model's resolution, so that the Identity Net, the maps and the Shading Net "
                "all work on a canonical face. The FACE_CROP remembers the transform for Paste Back. With an 'every "
                "face' selection a group photo gives a batch of crops, left to right.",
        role_zh="论文推理的起点：把参考人像的脸裁出、对齐（双眼水平、固定比例）并缩放到模型分辨率，使身份网络、光照/高频图和着色网络"
                "都在标准化的人脸上工作。FACE_CROP 记录变换，供贴回使用。选择 “every face” 时，合影会得到从左到右的一批裁剪。",
        picture="face_crop",
        typical_en=["crop_size 512 (SD1.5), 1024 (SDXL, Flux.1).",
                    "context 0.25 keeps hair and chin; 0.4-0.6 includes more shoulders when the harmonization should "
                    "have more to work with.",
                    "selection **every face (left to right)** for group photos; **every face matching identity** with "
                    "the person's photos on 'identity' re-renders only that person."],
        typical_zh=["crop_size：512（SD1.5），1024（SDXL、Flux.1）。",
                    "context 0.25 保留头发和下巴；需要给融合更多余地时用 0.4-0.6，包含更多肩部。",
                    "合影用 **every face (left to right)**；在 identity 上连接该人物的照片并选 **every face matching identity**，"
                    "只重绘这个人。"],
        inputs_zh={
            "image": ("图像", "参考人像或合影（批次逐张裁剪）。灰度图按 RGB 处理；忽略 alpha。"),
            "crop_size": ("裁剪尺寸", "正方形裁剪的边长（像素，8 的倍数以适配 VAE）。SD1.5 用 512，SDXL 用 1024。"),
            "context": ("边距", "人脸周围的边距：人脸模板框占裁剪的 1/(1+2*context)。0.25 保留头发和下巴；更大则包含更多肩部/背景。"),
            "selection": ("选择", "找到多张脸时选哪张：最大框、检测分数最高、按从左到右的索引、与 identity 照片最相似、恰好一张"
                                 "（否则报错）；或多张：每张脸（从左到右的一批裁剪；过小或被边缘截断的脸被跳过），或每张与 identity "
                                 "照片匹配的脸。"),
            "index": ("索引", "selection 为 “index (left to right)” 时的人脸序号（0 = 最左）。"),
            "min_face_size": ("最小人脸尺寸", "可接受的最小人脸（框边长，像素）；更小的脸会报错，而不是得到模糊的裁剪。"),
            "identity": ("身份照片", "要挑选的人物的照片，用于 “most similar to identity” 和 “every face matching identity”。"),
        },
        outputs_zh=[("人脸", "对齐的正方形人脸裁剪，RGB，crop_size x crop_size：每张图一张；选择 “every face” 时为每张图中"
                             "选中的每张脸，从左到右。"),
                    ("人脸裁剪信息", "每个裁剪的变换、关键点、图像尺寸和来源图像，供贴回使用。")],
    ),
    "MegaPortraitLoadSourcePhotos": dict(
        zh_title="加载源照片",
        zh_description="从 ComfyUI 输入目录中的文件夹和/或文件名列表加载源人物的照片（任意尺寸），围绕人脸（或中心）裁成正方形并缩放，"
                       "得到供身份 LoRA 训练器使用的一个 IMAGE 批次。从不拉伸照片。",
        role_en="Input of the paper's Identity Net: the few photos (3-20) of the person to put into the portrait. Each "
                "photo is cropped to a square around the face and resized to the training resolution; with a "
                "face_analysis connected it also checks that all photos show one person.",
        role_zh="论文身份网络的输入：要放进人像的那个人的少量照片（3-20 张）。每张照片围绕人脸裁成正方形并缩放到训练分辨率；"
                "连接 face_analysis 时还会检查所有照片是否为同一人。",
        typical_en=["folder megaportrait_source (ComfyUI/input/megaportrait_source/), resolution 512 (SD1.5, Flux.1 "
                    "training) or 1024 (SDXL).",
                    "face_scale 2.2 (head and a bit of shoulders); 1.6 for tighter faces.",
                    "min_photos 6 when you have only 1-3 photos (augmented copies fill up); 0 otherwise."],
        typical_zh=["folder 用 megaportrait_source（ComfyUI/input/megaportrait_source/），resolution 512（SD1.5、Flux.1 训练）"
                    "或 1024（SDXL）。",
                    "face_scale 2.2（头部和少量肩部）；要更紧凑的脸用 1.6。",
                    "只有 1-3 张照片时 min_photos 设为 6（用增强副本补足）；否则为 0。"],
        inputs_zh={
            "folder": ("文件夹", "ComfyUI/input 中存放源照片的子文件夹（用运行器上传或直接复制到此处）。留空 = 只用下面列出的文件。"),
            "filenames": ("文件名", "ComfyUI/input 中的额外文件，每行一个（例如用 Load Image 上传的照片）。"),
            "resolution": ("分辨率", "输出正方形的边长（SD1.5 用 512，SDXL 用 1024）。"),
            "face_scale": ("人脸比例", "有 face_analysis 时：正方形边长 = 人脸尺寸 x 此值（2.2 = 头部和少量肩部）。"),
            "min_photos": ("最少照片数", "找到的照片少于此数时，添加增强副本（镜像、缩放/平移、小角度旋转、亮度/对比度）补足。0 = 不增强。"),
            "seed": ("种子", "增强的随机种子。"),
            "face_analysis": ("人脸分析", "围绕人脸裁剪（推荐）。没有人脸的照片会报错并给出文件名。"),
            "identity_check": ("身份检查", "有 face_analysis 时：照片必须是同一个人。与多数其他照片的身份距离高于后端阈值"
                                          "（dlib 0.6，insightface 0.65）的照片会在错误中列出；“warn and go on” 只记录日志。"),
        },
        outputs_zh=[("照片", "正方形照片，resolution x resolution，原图在前，增强副本在后。"), ("数量", "批次中的照片数。"),
                    ("人脸遮罩", "有 face_analysis 时：每张照片的脸部和头发的羽化遮罩（供训练器的人脸加权损失使用）；"
                                 "没有 face_analysis 或未找到人脸时处处为 1。")],
    ),
    "MegaPortraitIdentityLoraTrainer": dict(
        zh_title="身份 LoRA 训练器",
        zh_description="MegaPortrait 身份网络：在你加载的 MODEL（以及可选的 CLIP）上用源人物的 3-20 张照片训练身份 LoRA，"
                       "保存到 models/loras（kohya 格式：可在 LoraLoader 和 A1111 中加载），并返回应用了它的 MODEL/CLIP。"
                       "取消会保留检查点；重新排队即可继续。",
        role_en="Module 1 of the paper, the Identity Net (training): a LoRA that teaches the checkpoint the source "
                "person under a rare trigger word. Its MODEL goes to the Dual-Strength Identity Sampler, the Shading "
                "ControlNet Sampler and Harmonize; its lora_name to Harmonize's inpainting model. Trained once per "
                "person: 'reuse' finds the same LoRA again by its metadata.",
        role_zh="论文的模块 1，身份网络（训练）：用一个罕见触发词让检查点学会源人物的 LoRA。它的 MODEL 接到双强度身份采样器、"
                "着色 ControlNet 采样器和融合节点；它的 lora_name 接到融合节点的修复模型。每个人只需训练一次：“reuse” 会通过元数据找回同一个 LoRA。",
        typical_en=["SD1.5 / SDXL: 800 steps, rank 8, alpha 8, learning_rate 1e-4, batch_size 1, flip on.",
                    "face_masks from Load Source Photos with background_weight 0.25: the loss counts the face most.",
                    "Flux.1: 1000 steps, rank 16, alpha 16, gradient_checkpointing on (16-24 GB cards).",
                    "Z-Image-Turbo: the training adapter on 'model' only (LoraLoaderModelOnly), Turbo without it on "
                    "output_model; 1500 steps, rank 16, alpha 16, learning_rate 1e-4, resolution 1024.",
                    "Identity too weak: more steps or train_text_encoder; reference pose or light ignored (overfit): "
                    "fewer steps or a lower LoRA strength downstream."],
        typical_zh=["SD1.5 / SDXL：800 步，rank 8，alpha 8，learning_rate 1e-4，batch_size 1，开启 flip。",
                    "face_masks 接加载源照片的输出，background_weight 0.25：损失以人脸为主。",
                    "Flux.1：1000 步，rank 16，alpha 16，开启 gradient_checkpointing（16-24 GB 显卡）。",
                    "Z-Image-Turbo：训练适配器只加在 'model' 上（LoraLoaderModelOnly），output_model 接不带适配器的 Turbo；"
                    "1500 步，rank 16，alpha 16，learning_rate 1e-4，resolution 1024。",
                    "身份太弱：增加步数或开启 train_text_encoder；参考的姿态或光照被忽略（过拟合）：减少步数或在下游降低 LoRA 强度。"],
        inputs_zh={
            "model": ("模型", "要个性化的检查点（SD1.5、SDXL、Flux.1 或 Z-Image；上游已应用的其他 LoRA 会烘焙进训练副本）。"),
            "clip": ("CLIP", "它的文本编码器：编码实例提示词（开启 train_text_encoder 时也被训练）。"),
            "vae": ("VAE", "它的 VAE：把照片编码为潜空间。"),
            "images": ("图像", "该人物的 3-20 张照片（例如来自加载源照片）。裁成正方形（连接 face_analysis 时围绕人脸）并缩放到 resolution。"),
            "trigger_word": ("触发词", "在提示词中代表此人的罕见词。"),
            "class_word": ("类别词", "主体是什么（person、woman、man……）。"),
            "prompt_template": ("提示词模板", "每张照片的实例提示词；{trigger} 和 {class} 会被替换。在采样器的提示词中使用相同的词。"),
            "steps": ("步数", "优化步数。公开的身份 LoRA 配方用几百到约 1500 步（约每张照片 100 步）；过多会过拟合（忽略参考的姿态/光照）。"),
            "learning_rate": ("学习率", "UNet LoRA 学习率（AdamW）。rank 4-16 时常用 1e-4。"),
            "rank": ("秩", "LoRA 秩（容量）。人脸通常用 4-16；越高文件越大，越易过拟合。"),
            "alpha": ("alpha", "LoRA alpha：更新按 alpha/rank 缩放。alpha = rank（默认）即缩放为 1。"),
            "batch_size": ("批大小", "每步的照片数。"),
            "resolution": ("分辨率", "训练分辨率（SD1.5 和 Flux.1 用 512，Z-Image 用 768，SDXL 用 1024）。"),
            "seed": ("种子", "LoRA 初始化、批次、噪声和时间步的种子：相同种子 + 设置 = 相同的 LoRA。"),
            "save_name": ("保存名", "models/loras 下的文件名（可用 '/' 建子文件夹）；自动添加 '.safetensors'。"),
            "face_analysis": ("人脸分析", "围绕人脸裁剪每张照片（推荐）。没有人脸的照片会报错并给出文件名。"),
            "face_masks": ("人脸遮罩", "每张照片一个遮罩（1 = 脸部和头发），例如加载源照片的 face_masks：遮罩外的损失乘以 "
                                       "background_weight，让 LoRA 更多地学习人脸，而不是照片的背景、衣着和光照。照片在此处被裁剪时遮罩随之裁剪。"),
            "train_text_encoder": ("训练文本编码器", "同时训练文本编码器 LoRA（lora_te 键）。身份更强，过拟合风险更大。"),
            "text_learning_rate": ("文本学习率", "文本编码器 LoRA 的学习率（训练时）。"),
            "target": ("目标层", "加 LoRA 的 UNet 层：注意力投影（q、k、v、out），或再加上前馈层。"),
            "flip": ("翻转", "同时用镜像照片训练（数据翻倍）。"),
            "gradient_checkpointing": ("梯度检查点", "在反向传播中重算激活：显存大幅减少，约慢 30%。"),
            "precision": ("精度", "GPU 上的混合精度（auto = 支持时用 bf16，否则 fp16 加损失缩放）。CPU 始终用 fp32 训练。"),
            "checkpoint_every": ("检查点间隔", "每 N 步写一次续训检查点（0 = 只在取消时写）。"),
            "resume": ("续训", "auto：继续相同 save_name 和设置下被中断的训练；off：重新开始。"),
            "if_exists": ("文件已存在时", "LoRA 文件已存在时：加计数后缀（name_00001）、覆盖，或报错停止。"),
            "if_trained": ("已训练时", "reuse：models/loras 中已有用相同照片、模型、提示词和设置训练的 LoRA（通过元数据中的键找到）时直接使用，"
                                      "不再训练；train again：总是训练。"),
            "background_weight": ("背景权重", "有 face_masks 时：脸部和头发之外像素的损失权重（遮罩内为 1）。1 = 普通损失；"
                                              "0 = 只学人脸（背景会漂移）；0.25 在让人脸占主导的同时稳住背景。"),
            "output_model": ("输出模型", "代替 'model' 返回并应用身份 LoRA 的 MODEL（同一模型系列）：例如没有训练适配器的 Z-Image-Turbo"
                                        "（LoraLoaderModelOnly 只为训练给 'model' 加上适配器），或 'model' 为 Z-Image Base 时的 Turbo。"
                                        "留空：用 'model'。"),
        },
        outputs_zh=[("模型", "应用了训练好的 LoRA 的输入 MODEL（或 output_model）（克隆；输入不变）。"),
                    ("CLIP", "输入的 CLIP，训练了文本编码器 LoRA 时带上它（克隆）。"),
                    ("LoRA 名称", "models/loras 中 LoRA 的文件名（供 LoraLoader / 加载身份 LoRA 使用）。"),
                    ("损失曲线", "每步的损失（原始与平滑）。")],
    ),
    "MegaPortraitLoadIdentityLora": dict(
        zh_title="加载身份 LoRA",
        zh_description="应用之前训练好的身份 LoRA（跳过训练）。与 LoraLoader 类似，另外检查 LoRA 是否适配模型，并从文件元数据读取触发词/提示词。",
        role_en="The Identity Net without training: applies an identity LoRA trained earlier (by the trainer, or any "
                "kohya LoRA of the same family) and tells you its instance prompt, so the trigger word in your prompt "
                "matches. Used by the megaportrait_with_lora and megaportrait_group workflows.",
        role_zh="不训练的身份网络：应用之前训练好的身份 LoRA（由训练器得到，或同一模型系列的任意 kohya LoRA），并给出它的实例提示词，"
                "让你提示词中的触发词与之一致。用于 megaportrait_with_lora 和 megaportrait_group 工作流。",
        typical_en=["strength_model 1.0, strength_clip 1.0; 0.6-0.8 when the identity overpowers the reference's "
                    "expression or lighting."],
        typical_zh=["strength_model 1.0，strength_clip 1.0；身份压过参考的表情或光照时用 0.6-0.8。"],
        inputs_zh={
            "model": ("模型", "训练该 LoRA 时用的检查点（同一系列）。"),
            "clip": ("CLIP", "它的文本编码器。"),
            "lora_name": ("LoRA 名称", "models/loras 中的 LoRA 文件（例如训练器的 save_name）。"),
            "strength_model": ("模型强度", "UNet LoRA 强度（1 = 按训练；0 = 关闭）。"),
            "strength_clip": ("CLIP 强度", "文本编码器 LoRA 强度。"),
        },
        outputs_zh=[("模型", "带 LoRA 的 MODEL（克隆）。"), ("CLIP", "带 LoRA 的 CLIP（克隆）。"),
                    ("提示词", "训练时的实例提示词（例如 'photo of sks person'）；未知时为空。"), ("信息", "文件自身记录的信息。")],
    ),
    "MegaPortraitDualStrengthIdentitySampler": dict(
        zh_title="双强度身份采样器",
        zh_description="MegaPortrait 身份网络推理：用身份 LoRA 模型把参考人脸裁剪重绘两次：参考相似结果（低降噪：保留参考的明暗）"
                       "和源相似结果（高降噪：身份强）。能共享时两个分支共用模型计算。",
        role_en="Module 1 of the paper at inference: the identity model re-renders the reference face twice. The "
                "reference-like result (low denoise) keeps the reference's shading and colours; the source-like result "
                "(high denoise) carries the person's identity. The Light Map takes the first, the HF Map the second.",
        role_zh="论文模块 1 的推理：身份模型把参考人脸重绘两次。参考相似结果（低降噪）保留参考的明暗和色彩；源相似结果（高降噪）"
                "带有人物的身份。光照图取前者，高频图取后者。",
        typical_en=["reference_denoise 0.3-0.4, source_denoise 0.65-0.8; steps 25, cfg 5 (SD1.5/SDXL) or cfg 1 with "
                    "FluxGuidance 3.5 (Flux.1).",
                    "A tile ControlNet at control_strength 0.4 holds the geometry of both branches.",
                    "Keep share_passes on: both branches in one batch, half the model passes, same result."],
        typical_zh=["reference_denoise 0.3-0.4，source_denoise 0.65-0.8；steps 25，cfg 5（SD1.5/SDXL），或 cfg 1 加 "
                    "FluxGuidance 3.5（Flux.1）。",
                    "用 control_strength 0.4 的 tile ControlNet 保持两个分支的几何结构。",
                    "保持 share_passes 开启：两个分支合为一批，模型计算减半，结果相同。"],
        inputs_zh={
            "model": ("模型", "身份模型（检查点 + 身份 LoRA），用于源相似分支（未连接 reference_model 时也用于参考相似分支）。"),
            "image": ("图像", "对齐的参考人脸裁剪（来自人脸裁剪）；边长为 8 的倍数。"),
            "steps": ("步数", "每个分支的步数（与带 denoise 的 KSampler 相同：两者都运行这么多步）。"),
            "vae": ("VAE", "编码人脸裁剪并解码两个结果。"),
            "reference_denoise": ("参考降噪", "参考相似分支：低降噪保留参考的明暗和色彩（0 = 输入不变）。"),
            "source_denoise": ("源降噪", "源相似分支：高降噪让身份 LoRA 重绘人脸（1 = 从噪声开始）。"),
            "reference_model": ("参考模型", "参考相似分支的可选模型，身份更弱（例如强度 0.3-0.5 的身份 LoRA，或基础检查点）。不同模型依次运行。"),
            "latent": ("潜空间", "可选：从此潜空间开始，而不是编码 image。"),
            "control_net": ("ControlNet", "可选 ControlNet，在两个分支中保持人脸几何（例如 tile、lineart 或 depth）；"
                                        "更多 ControlNet 可用标准节点在上游施加到条件上。"),
            "control_image": ("控制图像", "control_net 的提示图（默认：人脸裁剪本身）。"),
            "control_strength": ("控制强度", "ControlNet 强度（0 = 关闭）。"),
            "control_start": ("控制开始", "ControlNet 开始（调度的比例）。"),
            "control_end": ("控制结束", "ControlNet 结束（调度的比例）。小于 1（或开始大于 0）时两个分支依次运行。"),
            "share_passes": ("共享计算", "尽可能让两个分支作为一批同步运行（与两个 KSampler 结果相同，模型计算减半）："
                                        "采样器 euler、ddim、heun、dpmpp_2m，且只有一个 MODEL。"),
        },
        outputs_zh=[("参考潜空间", "参考相似结果（潜空间）。"), ("参考图像", "参考相似结果：把它的低通送入光照图。"),
                    ("源潜空间", "源相似结果（潜空间）。"), ("源图像", "源相似结果：把它的高通送入高频图。")],
    ),
    "MegaPortraitLightMap": dict(
        zh_title="光照图",
        zh_description="MegaPortrait 光照图：（参考相似）人脸的低通，保留光照和色彩而不保留身份细节。送入 tile/着色 ControlNet。",
        role_en="The paper splits control into shading and identity: the light map is the low-pass of the "
                "reference-like face, i.e. the reference's lighting and colour without its identity details. It drives "
                "the Shading Net's light ControlNet (tile on SD1.5/SDXL, blur mode of a Flux union ControlNet).",
        role_zh="论文把控制拆分为明暗与身份：光照图是参考相似人脸的低通，即参考的光照和色彩，不含身份细节。它驱动着色网络的光照 ControlNet"
                "（SD1.5/SDXL 用 tile，Flux 用 union ControlNet 的 blur 模式）。",
        picture="maps",
        typical_en=["sigma 8 relative to 512 px (the same on every resolution). 4-6 keeps more of the reference's "
                    "form; 12-16 only broad light.",
                    "Use the same sigma, mode and filter as the HF Map, so light + HF = the image.",
                    "Connect Paste Back's face_mask (or any face mask) to keep the background out of the face's light."],
        typical_zh=["sigma 8，relative to 512 px（各分辨率效果一致）。4-6 保留更多参考的形体；12-16 只保留大范围光照。",
                    "与高频图使用相同的 sigma、模式和滤波器，使光照 + 高频 = 原图。",
                    "连接贴回的 face_mask（或任意人脸遮罩），避免背景混入脸部的光照。"],
        inputs_zh={
            "image": ("图像", "要滤波的图像（任意尺寸，支持批次）。"),
            "mask": ("遮罩", "可选区域（例如脸部遮罩）。在其内部低通只平均遮罩内的像素，背景不会渗入脸部的光照图。与图像同尺寸；一个遮罩或每张图一个。"),
        },
        outputs_zh=[("光照图", "低通图像，尺寸和通道与输入相同。")],
    ),
    "MegaPortraitHFMap": dict(
        zh_title="高频图",
        zh_description="MegaPortrait 高频图：图像减去与光照图相同的低通，即（源相似）人脸不含明暗的身份细节。以 0..1 的 IMAGE 输出："
                       "signed 为 0.5 + detail * gain / 2（0.5 = 无细节；重组光照与高频图可还原），magnitude 为 |detail| * gain"
                       "（类似边缘的提示，用于 soft-edge / line-art ControlNet）。",
        role_en="The identity half of the paper's control: the high-pass of the source-like face, i.e. its features "
                "(eyes, nose, mouth shapes, skin detail) without its shading. It drives the Shading Net's detail "
                "ControlNet: the magnitude encoding for softedge/lineart/canny nets, the signed one to recombine.",
        role_zh="论文控制中的身份部分：源相似人脸的高通，即五官形状与皮肤细节，不含明暗。它驱动着色网络的细节 ControlNet："
                "softedge/lineart/canny 用 magnitude 编码，重组用 signed 编码。",
        picture="maps",
        typical_en=["sigma as the Light Map (8, relative to 512 px).",
                    "Signed map for Recombine Maps: gain 1.0. Edge hint for a ControlNet: encoding magnitude, gain 3-5 "
                    "(the shipped workflows use 4)."],
        typical_zh=["sigma 与光照图相同（8，relative to 512 px）。",
                    "供重组使用的 signed 图：gain 1.0。作为 ControlNet 的边缘提示：encoding 用 magnitude，gain 3-5（随附工作流用 4）。"],
        inputs_zh={
            "image": ("图像", "要滤波的图像（任意尺寸，支持批次）。"),
            "gain": ("增益", "高频图对比度：hf = 0.5 + detail * gain / 2。1.0 时可精确还原（光照图 + 高频图 = 原图）；更大的值让细微细节"
                             "对 ControlNet 更明显，但会截断强边缘。"),
            "mask": ("遮罩", "可选区域（例如脸部遮罩）。在其内部低通只平均遮罩内的像素，背景不会渗入脸部。与图像同尺寸；一个遮罩或每张图一个。"),
            "encoding": ("编码", "signed：0.5 + detail*gain/2，可用重组光照与高频图还原（默认）。magnitude：|detail|*gain，黑底白边，"
                                "用于 soft-edge / line-art ControlNet。"),
        },
        outputs_zh=[("高频图", "编码后的高频图，0..1，供 ControlNet 和预览使用。"),
                    ("细节", "原始带符号细节（图像 - 低通），取值 -1..1；用于数学节点，不用于预览。")],
    ),
    "MegaPortraitRecombineMaps": dict(
        zh_title="重组光照与高频图",
        zh_description="光照图 + 高频图 -> 图像（light + (hf - 0.5) * 2 / gain）。重组同一图像的两张图会得到原图；把一张脸的光照图与"
                       "另一张脸的高频图混合，正是着色网络的目标。",
        role_en="Reference light + source detail in one image: the rough target of the paper's Shading Net. The shipped "
                "workflows feed it as the Shading ControlNet Sampler's init_image, so sampling starts close to the goal.",
        role_zh="把参考的光照与源的细节合成一张图：论文着色网络的粗略目标。随附工作流把它作为着色 ControlNet 采样器的 init_image，"
                "让采样从接近目标的地方开始。",
        picture="maps",
        typical_en=["gain: the HF Map's gain (1.0 for the signed map)."],
        typical_zh=["gain：与高频图的 gain 相同（signed 图为 1.0）。"],
        inputs_zh={
            "light_map": ("光照图", "光照图节点的输出。"),
            "hf_map": ("高频图", "高频图节点的 hf_map 输出（与光照图同尺寸）。"),
            "gain": ("增益", "生成高频图时用的 gain。"),
        },
        outputs_zh=[("图像", "重组后的图像，截断到 0..1。")],
    ),
    "MegaPortraitShadingSampler": dict(
        zh_title="着色 ControlNet 采样器",
        zh_description="MegaPortrait 着色网络：用两个现成的 ControlNet 重绘人脸，一个作用于光照图（参考的明暗），一个作用于高频图"
                       "（源的身份细节）。有 init 图像/潜空间且 denoise < 1 时细化该图；否则按图的尺寸从噪声采样。",
        role_en="Module 3 of the paper, the Shading Net: the face is rendered again under two ControlNets at once, the "
                "light map (reference shading) and the HF map (source identity), so the result has the person's face "
                "in the reference's light. Its image goes to Paste Back.",
        role_zh="论文的模块 3，着色网络：在两个 ControlNet 同时作用下再次渲染人脸，光照图（参考的明暗）和高频图（源的身份），"
                "使结果在参考的光照下呈现这个人的脸。输出图像送往贴回。",
        typical_en=["light_strength 0.6 over the whole schedule; hf_strength 0.5 ending at 0.7 (the last steps free "
                    "for skin texture).",
                    "init_image = Recombine Maps' output with denoise 0.75; denoise 1 samples from noise.",
                    "Result too flat or too like the reference: raise hf_strength; wrong light: raise light_strength."],
        typical_zh=["light_strength 0.6，作用于整个调度；hf_strength 0.5，在 0.7 处结束（最后几步留给皮肤纹理）。",
                    "init_image = 重组光照与高频图的输出，denoise 0.75；denoise 1 则从噪声采样。",
                    "结果太平或太像参考：提高 hf_strength；光照不对：提高 light_strength。"],
        inputs_zh={
            "model": ("模型", "身份模型（检查点 + 身份 LoRA）或基础检查点。"),
            "positive": ("正向", "提示词（使用身份 LoRA 时带上触发词）。"),
            "vae": ("VAE", "编码 init 图像并解码结果。"),
            "light_map": ("光照图", "来自光照图节点（参考相似图像的低通）。"),
            "hf_map": ("高频图", "来自高频图节点（源相似图像的高通）；尺寸相同。"),
            "light_control_net": ("光照 ControlNet", "用于光照图的 ControlNet，例如 tile/blur ControlNet。"),
            "hf_control_net": ("高频 ControlNet", "用于高频图的 ControlNet，例如 lineart/softedge 或 tile。"),
            "light_strength": ("光照强度", "光照图 ControlNet 的强度（0 = 关闭）。"),
            "light_start": ("光照开始", "光照图 ControlNet 开始的位置（调度的比例）。"),
            "light_end": ("光照结束", "光照图 ControlNet 停止的位置（调度的比例）。"),
            "hf_strength": ("高频强度", "高频图 ControlNet 的强度（0 = 关闭）。"),
            "hf_start": ("高频开始", "高频图 ControlNet 开始的位置（调度的比例）。"),
            "hf_end": ("高频结束", "高频图 ControlNet 停止的位置（调度的比例）。"),
            "denoise": ("降噪", "有 init 图像/潜空间时：重绘的程度（1 = 忽略它）。没有时无论此值如何都从噪声开始。"),
            "init_image": ("初始图像", "可选起始图像（例如源相似图像或重组后的图）；与图同尺寸。"),
            "init_latent": ("初始潜空间", "可选起始潜空间，代替 init_image。"),
        },
        outputs_zh=[("潜空间", "重绘的人脸（潜空间）。"), ("图像", "重绘的人脸：送入贴回。")],
    ),
    "MegaPortraitShadingSamplerModelPatch": dict(
        zh_title="着色 Fun ControlNet 采样器",
        zh_description="用于 ControlNet 为模型补丁（MODEL_PATCH，例如 Z-Image 的 Fun ControlNet，由 ModelPatchLoader 加载）的模型系列的"
                       "着色网络：一个控制作用于光照图（如 tile Fun ControlNet），一个作用于高频图（如 union Fun ControlNet），"
                       "各有强度和调度窗口，方式与自带的 ZImageFunControlnet 节点相同。",
        role_en="Module 3 of the paper, the Shading Net, for model families whose ControlNets are model patches "
                "(Z-Image's Fun ControlNets): the face is rendered again under the light map and the HF map at once. "
                "Its image goes to Paste Back.",
        role_zh="论文的模块 3，着色网络，用于 ControlNet 为模型补丁的模型系列（Z-Image 的 Fun ControlNet）：在光照图和高频图"
                "同时作用下再次渲染人脸。输出图像送往贴回。",
        typical_en=["Z-Image Turbo: 8 steps, cfg 1, res_multistep / simple; light_strength 0.6 with the tile control, "
                    "hf_strength 0.5 ending at 0.7 with the union control."],
        typical_zh=["Z-Image Turbo：8 步，cfg 1，res_multistep / simple；tile 控制的 light_strength 0.6，union 控制的 "
                    "hf_strength 0.5，在 0.7 处结束。"],
        inputs_zh={
            "model": ("模型", "身份模型或基础模型（其 ControlNet 为模型补丁的系列，例如 Z-Image）。"),
            "positive": ("正向", "提示词（使用身份 LoRA 时带上触发词）。"),
            "vae": ("VAE", "编码 init 图像并解码结果。"),
            "light_map": ("光照图", "来自光照图节点（参考相似图像的低通）。"),
            "hf_map": ("高频图", "来自高频图节点（源相似图像的高通）；尺寸相同。"),
            "light_model_patch": ("光照控制", "用于光照图的模型补丁，来自 ModelPatchLoader（例如 tile Fun ControlNet）。"),
            "hf_model_patch": ("高频控制", "用于高频图的模型补丁，来自 ModelPatchLoader（例如 union Fun ControlNet）。"),
            "light_strength": ("光照强度", "光照图控制的强度（0 = 关闭）。"),
            "light_start": ("光照开始", "光照图控制开始的位置（调度的比例）。"),
            "light_end": ("光照结束", "光照图控制停止的位置（调度的比例）。"),
            "hf_strength": ("高频强度", "高频图控制的强度（0 = 关闭）。"),
            "hf_start": ("高频开始", "高频图控制开始的位置（调度的比例）。"),
            "hf_end": ("高频结束", "高频图控制停止的位置（调度的比例）。"),
            "denoise": ("降噪", "有 init 图像/潜空间时：重绘的程度（1 = 忽略它）。没有时从噪声开始。"),
            "init_image": ("初始图像", "可选起始图像；与图同尺寸。"),
            "init_latent": ("初始潜空间", "可选起始潜空间，代替 init_image。"),
        },
        outputs_zh=[("潜空间", "重绘的人脸（潜空间）。"), ("图像", "重绘的人脸：送入贴回。")],
    ),
    "MegaPortraitUnionControlNetMode": dict(
        zh_title="Union ControlNet 模式",
        zh_description="按名称设置 union ControlNet（一个模型、多种控制类型）的控制模式，并为其种类使用正确的编号：Flux.1 union 模型"
                       "（InstantX、Shakker-Labs Union Pro）与 SDXL union 模型（xinsir）的模式编号不同。对于 MegaPortrait 的着色网络："
                       "光照图用 blur（Flux）或 tile（SDXL），高频图用 canny（Flux）或 softedge/lineart（SDXL）。",
        role_en="Lets one union ControlNet serve as both of the Shading Net's ControlNets: the Flux.1 workflow loads "
                "the Union-Pro model once and sets it to 'blur' for the light map and 'canny' for the HF map.",
        role_zh="让一个 union ControlNet 同时充当着色网络的两个 ControlNet：Flux.1 工作流只加载一次 Union-Pro 模型，"
                "光照图设为 “blur”，高频图设为 “canny”。",
        typical_en=["Flux.1 union: blur (light map), canny (HF map). SDXL union: tile (light map), softedge or lineart "
                    "(HF map)."],
        typical_zh=["Flux.1 union：blur（光照图），canny（高频图）。SDXL union：tile（光照图），softedge 或 lineart（高频图）。"],
        inputs_zh={
            "control_net": ("ControlNet", "来自 ControlNetLoader 的 union ControlNet（例如 FLUX.1-dev-ControlNet-Union-Pro）。"),
            "mode": ("模式", "控制类型。Flux.1 union：canny、tile、depth、blur、pose、gray、low quality。SDXL union：pose、depth、"
                            "softedge、canny/lineart、normal、segment、tile、repaint。"),
        },
        outputs_zh=[("ControlNet", "设为该模式的 ControlNet 副本（已加载的不变）。")],
    ),
    "MegaPortraitPasteBack": dict(
        zh_title="贴回",
        zh_description="把重绘的人脸贴回参考图：重新检测其关键点并对齐到参考裁剪的关键点（校正姿态漂移），以亚像素精度反变换，"
                       "并用柔和遮罩混合。输出合成图、脸部遮罩和供融合节点使用的接缝遮罩。",
        role_en="Module 4 of the paper, the face paste-back: the re-rendered face is aligned by its landmarks to where "
                "the reference face was, colour-matched, and blended in with a soft mask. The seam mask (a band "
                "around the blend edge) tells the Harmonization Net where to work.",
        role_zh="论文的模块 4，人脸贴回：按关键点把重绘的人脸对齐到参考人脸原来的位置，进行颜色匹配，并用柔和遮罩混合。"
                "接缝遮罩（混合边缘周围的一条带）告诉融合网络在哪里工作。",
        picture="masks",
        typical_en=["align landmarks (needs face_analysis), mask_type face ellipse, feather 24, seam_width 16, "
                    "color_match mean (Lab).",
                    "Visible edge at the hairline: grow 8-16 or mask_type landmark hull with 68-point landmarks."],
        typical_zh=["align 用 landmarks（需要 face_analysis），mask_type 用 face ellipse，feather 24，seam_width 16，"
                    "color_match 用 mean (Lab)。",
                    "发际线处有明显边缘：grow 8-16，或使用 68 点关键点配合 mask_type landmark hull。"],
        inputs_zh={
            "reference": ("参考图", "送入人脸裁剪的完整参考人像。"),
            "face_crop": ("人脸裁剪信息", "来自人脸裁剪：每个裁剪如何得到、来自哪张图。"),
            "face": ("人脸", "重绘的人脸（正方形；任意尺寸，例如着色采样器的输出）：每个裁剪一张，顺序与人脸裁剪相同；"
                            "同一张图的所有脸都贴回该图。"),
            "align": ("对齐", "landmarks：重新检测人脸并校正姿态漂移（需要 face_analysis）。none：按裁剪时的位置原样贴回。"),
            "mask_type": ("遮罩类型", "混合区域：来自对齐模板的椭圆（额头到下巴）、关键点的凸包（68 点：下颌线），或整个裁剪方块。"),
            "grow": ("扩展", "扩展（>0）或收缩（<0）遮罩，以裁剪像素计。"),
            "feather": ("羽化", "柔和边缘宽度，以裁剪像素计（高斯）。"),
            "seam_width": ("接缝宽度", "遮罩边缘周围接缝带的半宽，以裁剪像素计。"),
            "color_match": ("颜色匹配", "混合前把贴入人脸的颜色匹配到参考人脸：none、仅亮度、Lab 均值，或 Lab 均值与对比度。"),
            "face_analysis": ("人脸分析", "align = landmarks 时需要（使用与人脸裁剪相同的加载器）。"),
        },
        outputs_zh=[("图像", "换上新脸的参考图；face_mask 之外的像素不变。"),
                    ("脸部遮罩", "贴入人脸在参考图坐标系中的柔和遮罩（图中所有脸的并集）。"),
                    ("接缝遮罩", "脸部遮罩边缘周围的带（每张脸）：修复这里以融合接缝。")],
    ),
    "MegaPortraitHarmonize": dict(
        zh_title="融合",
        zh_description="MegaPortrait 融合网络：对贴回人脸的接缝（或整张脸）进行修复，使脸和身体融为一体，使用 model（遮罩图生图；在 Z-Image 上"
                       "由 Fun ControlNet union 补丁的修复模式引导）或修复模型（FLUX.1 Fill、SD inpainting）。crop_to_mask 只在遮罩周围的扩展框内以工作分辨率采样并拼回；羽化遮罩之外的像素与输入完全相同。",
        role_en="Module 5 of the paper, the Harmonization Net: masked inpainting over Paste Back's seam mask so that "
                "face, hair and neck fuse. Pixels outside the grown and feathered mask stay exactly the pasted image.",
        role_zh="论文的模块 5，融合网络：在贴回的接缝遮罩上做遮罩修复，使脸、头发和颈部融为一体。扩展并羽化后的遮罩之外，像素与贴回的图像完全相同。",
        picture="masks",
        typical_en=["denoise 0.4-0.6 (0.5 in the workflows), grow 8, feather 16, crop_to_mask on, padding 0.3, "
                    "working_resolution 512 (SD1.5) or 1024 (SDXL, Flux.1).",
                    "SD1.5: an inpaint ControlNet at control_strength 0.8. Flux.1: inpaint_model = FLUX.1 Fill with the "
                    "identity LoRA (lora_name), fill_guidance 30. Z-Image: model = the identity model, "
                    "inpaint_model_patch = the Fun ControlNet union patch, control_strength 0.8."],
        typical_zh=["denoise 0.4-0.6（工作流中为 0.5），grow 8，feather 16，开启 crop_to_mask，padding 0.3，working_resolution 512"
                    "（SD1.5）或 1024（SDXL、Flux.1）。",
                    "SD1.5：control_strength 0.8 的 inpaint ControlNet。Flux.1：inpaint_model = FLUX.1 Fill 并带身份 LoRA（lora_name），"
                    "fill_guidance 30。Z-Image：model = 身份模型，inpaint_model_patch = Fun ControlNet union 补丁，control_strength 0.8。"],
        inputs_zh={
            "model": ("模型", "用于修复的模型（身份模型可保持人脸一致）。"),
            "positive": ("正向", "描述人像的提示词。"),
            "vae": ("VAE", "编码并解码该区域。"),
            "image": ("图像", "来自贴回的合成图（任意尺寸）。"),
            "mask": ("遮罩", "修复位置：贴回的 seam_mask（默认用法）或 face_mask；与图像同尺寸。分离的部分（多张脸的接缝）逐个采样，"
                            "各在自己的框内。"),
            "denoise": ("降噪", "遮罩区域重绘的程度（0.4-0.6 可在不改变人脸的情况下融合，与 FaceDetailer 类处理相同）。"),
            "grow": ("扩展", "扩展（>0）或收缩（<0）遮罩，以像素计。"),
            "feather": ("羽化", "拼接的柔和边缘，以像素计；grow + feather 之外图像不变。"),
            "crop_to_mask": ("裁剪到遮罩", "只在遮罩周围的扩展框内以 working_resolution 采样（大图时快）；遮罩的每个分离部分一个框。"),
            "padding": ("边距", "crop_to_mask 开启时遮罩框周围的上下文，按框尺寸的比例。"),
            "working_resolution": ("工作分辨率", "采样框的长边（SD1.5 用 512，SDXL 用 1024）。"),
            "control_net": ("ControlNet", "可选的修复 ControlNet（例如 control_v11p_sd15_inpaint）：其提示图是遮罩像素设为 -1 的区域。"),
            "control_strength": ("控制强度", "修复 ControlNet 或修复模型补丁的强度。"),
            "inpaint_model": ("修复模型", "可选的修复模型（FLUX.1 Fill，或与 model 同系列的 SD inpainting 检查点）：连接时由它代替 model "
                                        "修复，以遮罩图像为条件；否则 model 做遮罩图生图。"),
            "lora_name": ("LoRA 名称", "可选：身份 LoRA 训练器的 lora_name，应用到 inpaint_model 上，使修复区域保持身份。"),
            "inpaint_lora_strength": ("修复 LoRA 强度", "lora_name 在 inpaint_model 上的强度。"),
            "fill_guidance": ("Fill 引导", "给 FLUX.1 Fill 修复模型的引导值（推荐 30；提示词的 FluxGuidance 是给 dev 模型的）。"),
            "inpaint_model_patch": ("修复模型补丁", "可选，Z-Image：Fun ControlNet union 补丁（ModelPatchLoader）的修复模式："
                                                 "每个框的图像和遮罩在 model（带身份 LoRA）重绘遮罩区域时引导它。留空：遮罩图生图。"),
        },
        outputs_zh=[("图像", "融合后的图像，与输入同尺寸。"),
                    ("潜空间", "被修复区域的采样潜空间（开启 crop_to_mask 时为工作分辨率下的裁剪框；否则为补齐到 8 的倍数的整张图；"
                              "遮罩有多个部分时为输出图像的潜空间）。")],
    ),
}

# Pictures on the help pages (web/docs/asset/<name>.jpg, made by tools/build_surfaces.py --pictures)
PICTURES = {
    "maps": {"en": "From left: a face crop of example_inputs/astronaut.png, its light map (sigma 8), its signed HF map "
                   "(gain 1), the HF map as an edge hint (magnitude, gain 4), and light + HF recombined.",
             "zh": "从左到右：example_inputs/astronaut.png 的人脸裁剪、其光照图（sigma 8）、signed 高频图（gain 1）、"
                   "作为边缘提示的高频图（magnitude，gain 4），以及光照 + 高频重组结果。"},
    "face_crop": {"en": "Face Crop on example_inputs/grace_hopper.jpg: the crop square in the reference (left) and the "
                        "aligned 512 px crop (right; context 0.25).",
                  "zh": "在 example_inputs/grace_hopper.jpg 上的人脸裁剪：参考图中的裁剪方框（左）与对齐后的 512 像素裁剪（右；context 0.25）。"},
    "masks": {"en": "Paste Back's masks on example_inputs/grace_hopper.jpg: face_mask (face ellipse, feather 24) in "
                    "green and seam_mask (seam_width 16) in magenta: Harmonize inpaints the magenta band.",
              "zh": "example_inputs/grace_hopper.jpg 上贴回的遮罩：绿色为 face_mask（face ellipse，feather 24），品红色为 "
                    "seam_mask（seam_width 16）：融合节点修复品红色的带。"},
}
